// Package greeterpb is a minimal gRPC service used by switchyard's tests and examples; its
// reply names the instance that answered. Regenerate with `go generate ./internal/greeterpb`
// (needs protoc, protoc-gen-go and protoc-gen-go-grpc on PATH); the generated code is committed.
package greeterpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative greeter.proto
