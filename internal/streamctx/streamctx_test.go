package streamctx

import (
	"context"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f fakeStream) Context() context.Context { return f.ctx }

func TestWith(t *testing.T) {
	type key struct{}
	base := fakeStream{ctx: context.Background()}
	if got := With(base, base.ctx); got != grpc.ServerStream(base) {
		t.Fatal("With(ss, ss.Context()) wrapped the stream; want it unchanged")
	}
	ctx := context.WithValue(base.ctx, key{}, 1)
	if got := With(base, ctx); got.Context() != ctx {
		t.Fatal("the wrapped stream does not serve the new context")
	}
}
