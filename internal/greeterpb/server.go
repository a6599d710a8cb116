package greeterpb

import (
	"context"

	"google.golang.org/grpc"
)

// Server answers SayHello with a greeting and its Instance id.
type Server struct {
	UnimplementedGreeterServer
	Instance string
}

// SayHello implements GreeterServer.
func (s *Server) SayHello(_ context.Context, req *HelloRequest) (*HelloReply, error) {
	return &HelloReply{Message: "hello " + req.GetName(), Instance: s.Instance}, nil
}

// SayHellos implements GreeterServer: max(count, 1) replies.
func (s *Server) SayHellos(req *HelloRequest, stream grpc.ServerStreamingServer[HelloReply]) error {
	for i := int32(0); i < max(req.GetCount(), 1); i++ {
		reply, _ := s.SayHello(stream.Context(), req)
		if err := stream.Send(reply); err != nil {
			return err
		}
	}
	return nil
}
