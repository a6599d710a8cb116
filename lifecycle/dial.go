package lifecycle

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
)

// Dial returns a client connection to app (target switchyard:///<app>) that routes as this
// instance's own traffic does, for the code of a service that calls another. It sets:
//
//   - the resolver of the app's instances (registry.NewResolverBuilder on Config.Client,
//     Prefix, RequestTimeout and Logger) with the instance's rule client as its
//     ResolverConfig.Rules, so a shift reaches the picker as soon as the instance's rule client
//     has it, without waiting for the callee's instances to re-put their records;
//   - the switchyard balancer (the resolver's default service config);
//   - the rule client's UnaryClientInterceptor and StreamClientInterceptor, first in the
//     chain: a call made under a request's context keeps that request's sticky decision
//     (the server's interceptors put it there), and a call with none is decided by the rule;
//   - plaintext transport credentials (insecure.NewCredentials), as the instance's server
//     speaks plaintext unless Config.ServerOptions says otherwise.
//
// opts are applied after these: a grpc.WithTransportCredentials replaces the plaintext
// (pass one whenever the callee serves TLS; a grpc.WithCredentialsBundle conflicts with it,
// pass transport credentials instead), interceptors chained by opts run after switchyard's,
// and any other option (grpc.WithDefaultCallOptions, a stats handler) applies as usual. The
// caller closes the connection, before or after Offline.
//
// Dial may be called before Start, typically in main while building the handlers: like
// grpc.NewClient it connects nothing. The connection knows the rules once Start has loaded
// them; until then a call through it waits for them (up to its ctx), and the resolver starts
// once they are loaded, so no call is routed as if no release were open. If the instance
// stops before it loaded them (a failed Start, Offline or Abort before Start), such a call
// fails with codes.FailedPrecondition. After Offline the connection keeps working with the
// last rules the instance saw.
func (i *Instance) Dial(app string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if err := deploy.ValidateName("app", app); err != nil {
		return nil, fmt.Errorf("lifecycle: Dial: %w", err)
	}
	rb, err := registry.NewResolverBuilder(registry.ResolverConfig{
		Client: i.cfg.Client, Prefix: i.cfg.Prefix, RequestTimeout: i.cfg.RequestTimeout, Logger: i.cfg.Logger,
		Rules: loadedRules{i},
	})
	if err != nil {
		return nil, fmt.Errorf("lifecycle: Dial %s: %w", app, err)
	}
	all := append([]grpc.DialOption{
		grpc.WithResolvers(lateBuilder{i: i, inner: rb}),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(i.unaryClient),
		grpc.WithChainStreamInterceptor(i.streamClient),
	}, opts...)
	cc, err := grpc.NewClient(deploy.Scheme+":///"+app, all...)
	if err != nil {
		return nil, fmt.Errorf("lifecycle: Dial %s: %w", app, err)
	}
	return cc, nil
}

// awaitRules returns once Start has loaded the rules, or a gRPC status error if ctx ends or
// the instance stops first.
func (i *Instance) awaitRules(ctx context.Context) error {
	select {
	case <-i.loaded:
		return nil
	default:
	}
	select {
	case <-i.loaded:
		return nil
	case <-ctx.Done():
		return status.Error(status.FromContextError(ctx.Err()).Code(),
			"lifecycle: the call ended while its connection (Instance.Dial) waited for Start to load the traffic rules: "+ctx.Err().Error())
	case <-i.bg.Done():
		return status.Error(codes.FailedPrecondition, errNeverLoaded)
	}
}

const errNeverLoaded = "lifecycle: the instance stopped before Start loaded the traffic rules, which a connection of Instance.Dial routes by; " +
	"dial from an instance that starts, or build the client with registry.NewResolverBuilder and a traffic.Rules of your own"

func (i *Instance) unaryClient(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if err := i.awaitRules(ctx); err != nil {
		return err
	}
	return i.clientUnary(ctx, method, req, reply, cc, invoker, opts...)
}

func (i *Instance) streamClient(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if err := i.awaitRules(ctx); err != nil {
		return nil, err
	}
	return i.clientStream(ctx, desc, cc, method, streamer, opts...)
}

// loadedRules is the instance's rule client as the resolver's Rules. lateBuilder builds the
// resolver only once loaded is closed, so i.rules is set whenever it is read.
type loadedRules struct{ i *Instance }

func (r loadedRules) Traffic(app string) (string, float64, float64, bool) {
	return r.i.rules.Traffic(app)
}
func (r loadedRules) Updated() <-chan struct{} { return r.i.rules.Updated() }

// lateBuilder builds the registry resolver once Start has loaded the rules: at once if it
// has, else from a goroutine that waits for them (lateResolver).
type lateBuilder struct {
	i     *Instance
	inner resolver.Builder
}

func (b lateBuilder) Scheme() string { return deploy.Scheme }

func (b lateBuilder) Build(target resolver.Target, cc resolver.ClientConn, opts resolver.BuildOptions) (resolver.Resolver, error) {
	select {
	case <-b.i.loaded:
		return b.inner.Build(target, cc, opts)
	default:
	}
	r := &lateResolver{stop: make(chan struct{}), done: make(chan struct{})}
	go r.wait(b, target, cc, opts)
	return r, nil
}

// lateResolver waits for the rules, then builds the registry resolver and forwards to it.
// mu guards inner.
type lateResolver struct {
	stop chan struct{} // closed by Close
	done chan struct{} // closed when wait has returned
	mu   sync.Mutex
	// inner is the registry resolver once built; nil before.
	inner resolver.Resolver
}

func (r *lateResolver) wait(b lateBuilder, target resolver.Target, cc resolver.ClientConn, opts resolver.BuildOptions) {
	defer close(r.done)
	select {
	case <-r.stop:
		return
	case <-b.i.bg.Done():
		select {
		case <-b.i.loaded: // loaded, then stopped: the resolver works with the last rules
		default:
			cc.ReportError(fmt.Errorf("%s", errNeverLoaded))
			return
		}
	case <-b.i.loaded:
	}
	inner, err := b.inner.Build(target, cc, opts)
	if err != nil {
		cc.ReportError(err)
		return
	}
	r.mu.Lock()
	r.inner = inner
	r.mu.Unlock()
}

func (r *lateResolver) ResolveNow(o resolver.ResolveNowOptions) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inner != nil {
		r.inner.ResolveNow(o)
	}
}

// Close stops the wait and closes the registry resolver if it was built. gRPC calls it on
// its serializer without holding the ClientConn's lock, so waiting for wait (which may be
// handing gRPC a state) cannot deadlock.
func (r *lateResolver) Close() {
	close(r.stop)
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inner != nil {
		r.inner.Close()
	}
}
