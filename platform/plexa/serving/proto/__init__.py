"""Message classes of the Open Inference Protocol's gRPC service, generated from
grpc_predict_v2.proto by scripts/generate-protos (never edited by hand)."""
