package greeterpb

import "context"

// Server answers SayHello with a greeting and its Instance id.
type Server struct {
	UnimplementedGreeterServer
	Instance string
}

// SayHello implements GreeterServer.
func (s *Server) SayHello(_ context.Context, req *HelloRequest) (*HelloReply, error) {
	return &HelloReply{Message: "hello " + req.GetName(), Instance: s.Instance}, nil
}
