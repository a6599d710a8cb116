package stream_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/greeterpb"
	"github.com/switchyard-go/switchyard/stream"
)

// drainingOnce serves numbers from the request's position; its first stream ends after 3
// numbers the way a draining switchyard instance ends it (lifecycle sets the same trailer).
type drainingOnce struct {
	greeterpb.UnimplementedGreeterServer
	drained bool
}

func (s *drainingOnce) SayHellos(req *greeterpb.HelloRequest, st grpc.ServerStreamingServer[greeterpb.HelloReply]) error {
	from, _ := strconv.Atoi(req.GetName())
	for k := from; k < int(req.GetCount()); k++ {
		if k == 3 && !s.drained {
			s.drained = true
			st.SetTrailer(metadata.Pairs(deploy.OfflineHeader, "1"))
			return nil
		}
		if err := st.Send(&greeterpb.HelloReply{Message: strconv.Itoa(k)}); err != nil {
			return err
		}
	}
	return nil
}

func ExampleResume() {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer()
	greeterpb.RegisterGreeterServer(srv, &drainingOnce{})
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	conn, _ := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	client := greeterpb.NewGreeterClient(conn)

	next, opens := 0, 0 // the caller's position, and how often the stream was opened
	var got []string
	err := stream.Resume(context.Background(),
		func(ctx context.Context) (grpc.ServerStreamingClient[greeterpb.HelloReply], error) {
			opens++
			return client.SayHellos(ctx, &greeterpb.HelloRequest{Name: strconv.Itoa(next), Count: 6})
		},
		func(r *greeterpb.HelloReply) error {
			got = append(got, r.GetMessage())
			next++
			return nil
		})
	fmt.Println(strings.Join(got, " "))
	fmt.Printf("err=%v opens=%d\n", err, opens)
	// Output:
	// 0 1 2 3 4 5
	// err=<nil> opens=2
}
