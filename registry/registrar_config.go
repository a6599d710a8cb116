package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
)

// Defaults of Config.
const (
	DefaultTTL            = 10 * time.Second
	DefaultCheckInterval  = 500 * time.Millisecond
	DefaultCheckTimeout   = time.Minute
	DefaultRequestTimeout = 5 * time.Second
)

// Check is a readiness check: Register does not register the instance until every check
// returns nil in the same round (DESIGN.md "Lifecycle of an instance").
type Check struct {
	// Name identifies the check in errors and logs, e.g. "db".
	Name string
	// Func reports whether the instance is ready as far as this check goes. It is called
	// with a ctx that ends when Register gives up; it should return promptly.
	Func func(ctx context.Context) error
}

// Config configures a Registrar.
type Config struct {
	// Client is the etcd client. Required. The Registrar does not close it.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default deploy.DefaultPrefix ("/switchyard").
	Prefix string
	// Instance is the record to register. ID, App and Addr are required. A zero Weight
	// registers deploy.DefaultWeight (100); a zero StartTime registers the time of Register; with
	// an empty Channel, TrafficWeight is always deploy.DefaultWeight.
	Instance Record
	// TTL is the lease TTL, rounded up to whole seconds. If the instance dies, consumers
	// stop seeing it after at most TTL. Default DefaultTTL (10 s).
	TTL time.Duration
	// RegisterDelay is waited after the readiness checks pass and before registering,
	// e.g. to let caches fill. Default 0.
	RegisterDelay time.Duration
	// Checks are the readiness checks. Default none.
	Checks []Check
	// CheckInterval is the pause between rounds of failing readiness checks. Default
	// DefaultCheckInterval (500 ms).
	CheckInterval time.Duration
	// CheckTimeout caps how long Register waits for the readiness checks. Default
	// DefaultCheckTimeout (1 min).
	CheckTimeout time.Duration
	// RequestTimeout caps each etcd request, made in attempts within it (the first 500 ms
	// long, each next one twice as long; see the package doc, "Attempts"). Default
	// DefaultRequestTimeout (5 s).
	RequestTimeout time.Duration
	// OnStateChange, if set, is told of every state change, in order, from one goroutine.
	// It may block without holding up the Registrar, but should not for long; a panic in it
	// is recovered and logged.
	OnStateChange func(StateChange)
	// Logger receives state changes (Info/Warn) and retry details (Debug). Default
	// slog.Default().
	Logger *slog.Logger
}

// withDefaults checks cfg and returns it with every zero field that has a default set to it.
// The Instance record is checked (and its defaults filled) by NewRegistrar.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Client == nil {
		return Config{}, errors.New("registry: Config.Client is nil; pass a connected *clientv3.Client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = deploy.DefaultPrefix
	}
	if err := validatePrefix(cfg.Prefix); err != nil {
		return Config{}, err
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 0 {
		return Config{}, fmt.Errorf("registry: Config.TTL %v is negative; use a positive TTL (default %v)", cfg.TTL, DefaultTTL)
	}
	if cfg.RegisterDelay < 0 {
		return Config{}, fmt.Errorf("registry: Config.RegisterDelay %v is negative", cfg.RegisterDelay)
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	for i, c := range cfg.Checks {
		if c.Name == "" || c.Func == nil {
			return Config{}, fmt.Errorf("registry: Config.Checks[%d] needs both a Name and a Func", i)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// validatePrefix checks an etcd key prefix (of a Config, WatcherConfig or ResolverConfig).
func validatePrefix(p string) error {
	if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return fmt.Errorf("registry: prefix %q must start with '/' and not end with one, e.g. %q", p, deploy.DefaultPrefix)
	}
	return nil
}
