package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
)

// Defaults of Config.
const (
	DefaultListenAddr     = ":9000"
	DefaultAdminAddr      = ":8081"
	DefaultWarmup         = 30 * time.Second
	DefaultQuietPeriod    = time.Second
	DefaultMaxDrain       = 20 * time.Second
	DefaultStopTimeout    = 10 * time.Second
	DefaultStartTimeout   = 2 * time.Minute
	DefaultRequestTimeout = 5 * time.Second
	ColorEnv              = "SWITCHYARD_COLOR"
	AdvertiseHostEnv      = "POD_IP"
	defaultAdvertiseNote  = "set Config.AdvertiseAddr, or the POD_IP environment variable (Kubernetes: fieldRef status.podIP)"
)

// Component is a part of the instance that consumes work other than RPCs (an MQ consumer, a
// job executor), given to Instance.Append: started in order once the instance is registered,
// stopped in reverse while it drains, after its in-flight work. Stop's ctx ends when the
// drain's time is up (MaxDrain after it began); Stop must return by then. A component that
// must leave a drained color follows the Instance as its deploy.Drains; one that also
// implements EventHandler receives the rule events of the app's channel.
type Component interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// Config configures an Instance. Only Client and App are required.
type Config struct {
	// Client is the etcd client. Required; not closed by the Instance.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Default "/switchyard".
	Prefix string

	// App is the app this instance provides. Required.
	App string
	// ID identifies the instance; ids are unique per app (registry refuses a second live
	// instance with the same id). Default "<host name>-<gRPC port>" (the host name is the pod
	// name in Kubernetes), so two instances on one host do not clash; with ListenAddr port 0,
	// "<host name>-<process id>".
	ID string
	// Color is blue, green or none. Default the SWITCHYARD_COLOR environment variable.
	Color deploy.Color
	// Version labels the build, e.g. "v2". Default "".
	Version string
	// Weight is the base weight (capacity). Default 100.
	Weight float64
	// Warmup is how long consumers ramp the new instance's share up. Default 30 s; set a
	// negative value for none.
	Warmup time.Duration
	// Metadata is free-form, e.g. {"zone": "a"}. Default none.
	Metadata map[string]string

	// ListenAddr is where gRPC listens. Default ":9000".
	ListenAddr string
	// AdvertiseAddr is the host:port consumers dial. Default ListenAddr's host if it is a
	// specific address, else $POD_IP, with the listener's port.
	AdvertiseAddr string
	// ServerOptions are passed to grpc.NewServer after the Instance's own interceptors.
	// Default none.
	ServerOptions []grpc.ServerOption

	// AdminAddr is where the admin HTTP server listens (probes, /offline, /online,
	// /status, /stats). Default ":8081". The instance's record carries it as
	// registry.Record.Admin, with the advertised gRPC host and the listener's port.
	AdminAddr string
	// AdminToken, if set, is required as "Authorization: Bearer <token>" by POST /offline
	// and /online, which then accept any caller; if empty they accept only loopback callers.
	// Set it whenever a sidecar proxy fronts the admin port: the proxy makes remote callers
	// look like loopback.
	AdminToken string

	// Checks are readiness checks run before registering. Default none.
	Checks []registry.Check
	// RegisterDelay is waited after the checks pass. Default 0.
	RegisterDelay time.Duration
	// StartTimeout caps Start (readiness checks included, the wait for an unreadable
	// traffic rule of the app's channel, and the wait for etcd: while etcd does not answer,
	// Start tries again every RequestTimeout, logging a warning per attempt, until
	// StartTimeout). Default 2 min.
	StartTimeout time.Duration
	// TTL is the registration lease TTL. Default 10 s.
	TTL time.Duration
	// RequestTimeout caps each etcd request of the instance: loading the rules, registering,
	// re-putting the record, deregistering, revoking the lease (the registrar's requests are
	// made in attempts within it, the first 500 ms long: registry's doc, "Attempts"). It is
	// also how long one attempt of Start to reach etcd lasts, how long a drain gives its
	// deregistration before it reports it pending, and counts once in Offline's bound
	// (OfflineTimeout). Default 5 s.
	RequestTimeout time.Duration

	// QuietPeriod: the drain waits until no request has arrived for this long and none is
	// in flight. Default 1 s.
	QuietPeriod time.Duration
	// MaxDrain caps the whole drain: the components' Stop (their ctx ends then), the wait
	// for quiet and the deregistration beside them. Default 20 s.
	MaxDrain time.Duration
	// StopTimeout caps gRPC's GracefulStop, after which Stop cuts what is left. Default 10 s.
	// Offline takes at most MaxDrain + StopTimeout + RequestTimeout + 1 s (OfflineTimeout;
	// 36 s by default), whether etcd answers or not: terminationGracePeriodSeconds must
	// cover it.
	StopTimeout time.Duration

	// Logger, default slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the instance's metrics (doc.go "Signals": the requests it
	// serves, their duration, in-flight, crossings, its state, registration and drains).
	// Default otel.GetMeterProvider(), the global one: a no-op until the process sets one.
	MeterProvider metric.MeterProvider
}

func (c *Config) setDefaults() error {
	if c.Client == nil {
		return errors.New("lifecycle: Config.Client is nil; pass a connected *clientv3.Client")
	}
	if err := deploy.ValidateName("app", c.App); err != nil {
		return fmt.Errorf("lifecycle: Config.App: %w", err)
	}
	if c.ListenAddr == "" {
		c.ListenAddr = DefaultListenAddr
	}
	if c.ID == "" {
		id, err := defaultID(c.ListenAddr)
		if err != nil {
			return err
		}
		c.ID = id
	}
	if c.Color == "" {
		c.Color = deploy.Color(os.Getenv(ColorEnv))
	}
	if !c.Color.Valid() {
		return fmt.Errorf("lifecycle: color %q (from Config.Color or $%s) must be blue, green or empty", c.Color, ColorEnv)
	}
	switch {
	case c.Warmup == 0:
		c.Warmup = DefaultWarmup
	case c.Warmup < 0:
		c.Warmup = 0
	}
	if c.AdminAddr == "" {
		c.AdminAddr = DefaultAdminAddr
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.QuietPeriod <= 0 {
		c.QuietPeriod = DefaultQuietPeriod
	}
	c.offlineDefaults()
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	return nil
}

// OfflineTimeout is the most Offline takes with this config: MaxDrain + StopTimeout +
// RequestTimeout + 1 s (the admin server's shutdown), with the defaults filled in. Set the
// pod's terminationGracePeriodSeconds above it (36 s with the defaults: e.g. 40); a preStop
// hook that runs POST /offline spends the drain part of it, and Offline then skips the drain.
func (c Config) OfflineTimeout() time.Duration {
	c.offlineDefaults()
	return c.MaxDrain + c.StopTimeout + c.RequestTimeout + adminStopTimeout
}

// offlineDefaults fills in the durations that bound Offline.
func (c *Config) offlineDefaults() {
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.MaxDrain <= 0 {
		c.MaxDrain = DefaultMaxDrain
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = DefaultStopTimeout
	}
}

// advertise returns the address to register for a listener bound at bound.
func (c *Config) advertise(bound net.Addr) (string, error) {
	_, port, err := net.SplitHostPort(bound.String())
	if err != nil {
		return "", err
	}
	if c.AdvertiseAddr != "" {
		return c.AdvertiseAddr, nil
	}
	host, _, err := net.SplitHostPort(c.ListenAddr)
	if err != nil {
		return "", fmt.Errorf("lifecycle: Config.ListenAddr %q: %w", c.ListenAddr, err)
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return net.JoinHostPort(host, port), nil
	}
	if h := os.Getenv(AdvertiseHostEnv); h != "" {
		return net.JoinHostPort(h, port), nil
	}
	return "", fmt.Errorf("lifecycle: gRPC listens on %s, which consumers cannot dial; %s", c.ListenAddr, defaultAdvertiseNote)
}

// defaultID is "<host name>-<port>" for the port in listenAddr, or "<host name>-<pid>" when
// the port is chosen at listen time (0): unique on one host, and readable.
func defaultID(listenAddr string) (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("lifecycle: Config.ID is empty and the host name cannot be read (%v); set Config.ID", err)
	}
	suffix := strconv.Itoa(os.Getpid())
	if _, port, err := net.SplitHostPort(listenAddr); err == nil && port != "" && port != "0" {
		suffix = port
	}
	id := h + "-" + suffix
	if err := deploy.ValidateName("id", id); err != nil {
		return "", fmt.Errorf("lifecycle: Config.ID is empty and %q (host name and port) cannot serve as one (%v); set Config.ID", id, err)
	}
	return id, nil
}
