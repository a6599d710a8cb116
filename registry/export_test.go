package registry

import "time"

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
