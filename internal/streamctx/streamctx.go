// Package streamctx gives a gRPC server stream another context, for stream interceptors that
// derive one (baggage extraction in traffic, the own-color mark in lifecycle).
package streamctx

import (
	"context"

	"google.golang.org/grpc"
)

// With returns ss serving ctx as its Context, or ss itself when ctx is already its context.
func With(ss grpc.ServerStream, ctx context.Context) grpc.ServerStream {
	if ctx == ss.Context() {
		return ss
	}
	return &stream{ServerStream: ss, ctx: ctx}
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }
