// Package stream keeps a long server-streaming call going across a drain: when the instance
// serving it drains, the call resumes on another instance.
//
// A server-side handler of a long stream ends it cleanly when its instance begins to drain
// (it selects on lifecycle's Instance.GoingOffline and returns nil); the stream then ends with
// the offline flag (deploy.OfflineHeader) in its trailer, and the caller's balancer has
// already stopped picking that instance. Without help the caller sees io.EOF, which looks like
// the end of the stream. Resume tells the two apart: it runs the call, hands each message to
// the caller, and when the stream ends because its server drains, it opens the call again;
// the new stream goes to another instance. The caller keeps its position (say, the last
// offset handled) and open asks from there, so nothing is lost or repeated beyond what the
// caller's position allows.
//
//	var next int64 // the position: the first event not handled yet
//	err := stream.Resume(ctx,
//		func(ctx context.Context) (grpc.ServerStreamingClient[pb.Event], error) {
//			return client.Follow(ctx, &pb.FollowRequest{From: next})
//		},
//		func(e *pb.Event) error { handle(e); next = e.Offset + 1; return nil })
//
// A stream that ends without the flag (io.EOF) ends Resume with nil; any other error ends it
// with that error, also when the server was stopped before it could flag the stream (gRPC's
// UNAVAILABLE): whether such a call may be repeated is the caller's to decide. While every
// instance drains, streams that end drained before sending anything are retried with a
// backoff (10 ms up to 1 s) until ctx ends.
package stream
