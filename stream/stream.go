package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/backoff"
)

// Drained reports whether a trailer (or header) says the server ended the call because it
// drains: it carries deploy.OfflineHeader "1".
func Drained(md metadata.MD) bool {
	for _, v := range md.Get(deploy.OfflineHeader) {
		if v == "1" {
			return true
		}
	}
	return false
}

// Resume runs a server-streaming call to its end, handing each message to handle, and opens
// it again whenever the server ends it because it drains (see the package doc). open is
// called with a context that Resume cancels when that attempt is over; it must ask for the
// stream from the caller's position. Resume returns nil when a stream ends normally, handle's
// error when handle fails (the stream is cancelled), open's error, the stream's error, or
// ctx's error.
func Resume[T any](ctx context.Context, open func(context.Context) (grpc.ServerStreamingClient[T], error), handle func(*T) error) error {
	wait := backoff.Backoff{Min: 10 * time.Millisecond, Max: time.Second}
	for {
		got, drained, err := attempt(ctx, open, handle)
		if !drained {
			return err
		}
		if got > 0 {
			wait.Reset()
			continue
		}
		// Ended drained before a message: the instances may all be draining; do not spin.
		t := time.NewTimer(wait.Next())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// attempt runs one stream: how many messages it handled, whether it ended because its server
// drains, and the error that ends Resume otherwise.
func attempt[T any](ctx context.Context, open func(context.Context) (grpc.ServerStreamingClient[T], error), handle func(*T) error) (int, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := open(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("stream: open: %w", err)
	}
	for got := 0; ; got++ {
		m, err := s.Recv()
		switch {
		case err == nil:
			if err := handle(m); err != nil {
				return got, false, err
			}
		case errors.Is(err, io.EOF):
			return got, Drained(s.Trailer()), nil
		default:
			return got, false, err
		}
	}
}
