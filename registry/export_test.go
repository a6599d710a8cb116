package registry

import (
	"context"
	"time"
)

// ServiceConfigOf is serviceConfigOf, for the fuzz target of ResolverConfig's JSON options.
var ServiceConfigOf = serviceConfigOf

// SetResolverCoalesce makes resolvers built from now on coalesce watch responses within d,
// and returns a function that restores the default.
func SetResolverCoalesce(d time.Duration) (restore func()) {
	prev := resolverCoalesce.Swap(int64(d))
	return func() { resolverCoalesce.Store(prev) }
}

// DefaultServiceConfig is the service config the resolver sends without MethodConfig.
const DefaultServiceConfig = defaultServiceConfig

// RetryCap is the keeper's longest wait between re-syncs for a lease TTL.
var RetryCap = retryCap

// Request makes one etcd request in attempts as the Registrar's writes do (request), with
// the operation lock taken.
func (r *Registrar) Request(ctx context.Context, do func(context.Context) error) error {
	if err := r.lockOp(ctx); err != nil {
		return err
	}
	defer r.unlockOp()
	return r.request(ctx, do)
}
