package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/window"
)

// Collector reads the instances of apps and their /stats: the polling behind a Dashboard,
// for other users of the figures (package release judges a release step with it). Each Poll
// reads each app's instance records with registry.List and every instance's /stats, all in
// parallel, each bounded by Config.Timeout; an instance that does not answer is a Sample with
// Err. If an app's records cannot be read, Poll uses those of its last successful read of
// that app and says so.
//
// Locking: none; Poll must not be called concurrently with itself (it keeps the last
// successful read of each app between calls). Close may be called once Poll is done.
type Collector struct {
	cfg     Config
	ownHTTP bool
	records map[string][]registry.Record // by app: the last successful read
}

// NewCollector returns a Collector. It uses cfg's Client (required), Prefix, Timeout and
// HTTPClient, with the defaults of New; the other fields are ignored. Close it when done.
func NewCollector(cfg Config) (*Collector, error) {
	if cfg.Client == nil {
		return nil, errors.New("dashboard: Config.Client is nil; pass a connected *clientv3.Client")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = deploy.DefaultPrefix
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	return newCollector(cfg), nil
}

// newCollector builds a Collector on a cfg whose defaults are set.
func newCollector(cfg Config) *Collector {
	c := &Collector{cfg: cfg, records: map[string][]registry.Record{}}
	if cfg.HTTPClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 2
		c.cfg.HTTPClient, c.ownHTTP = &http.Client{Transport: tr}, true
	}
	return c
}

// Close closes the idle connections of the Collector's own HTTP client (none when
// Config.HTTPClient was given).
func (c *Collector) Close() {
	if c.ownHTTP {
		c.cfg.HTTPClient.CloseIdleConnections()
	}
}

// Poll reads the instance records of apps and each instance's /stats, all in parallel, and
// returns a Sample per instance (of every app, in apps' order, then the records' order). For
// each app whose records could not be read (the error wraps registry.ErrEtcdUnavailable when
// etcd did not answer), appErrs says why, and its samples are of the instances of its last
// successful read. A poll lasts at most about twice Config.Timeout. If ctx ends, the samples
// are cut short: check ctx before using them.
func (c *Collector) Poll(ctx context.Context, apps []string) (samples []Sample, appErrs map[string]error) {
	polls := make([]appPoll, len(apps))
	var wg sync.WaitGroup
	for i, app := range apps {
		last := c.records[app]
		wg.Go(func() { polls[i] = c.pollApp(ctx, app, last) })
	}
	wg.Wait()
	for i, app := range apps {
		p := polls[i]
		samples = append(samples, p.samples...)
		if p.err != nil {
			if appErrs == nil {
				appErrs = map[string]error{}
			}
			appErrs[app] = p.err
		} else if ctx.Err() == nil {
			c.records[app] = p.records
		}
	}
	for app := range c.records {
		if !slices.Contains(apps, app) {
			delete(c.records, app)
		}
	}
	return samples, appErrs
}

// appPoll is what one poll learnt of one app.
type appPoll struct {
	samples []Sample
	records []registry.Record // read now; nil if the read failed
	err     error
}

// pollApp reads app's instance records (last: those of the last successful read, used if
// this one fails) and then each instance's /stats, in parallel.
func (c *Collector) pollApp(ctx context.Context, app string, last []registry.Record) appPoll {
	lctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	recs, _, err := registry.List(lctx, c.cfg.Client, c.cfg.Prefix, app)
	cancel()
	p := appPoll{records: recs, err: err}
	if err != nil {
		recs = last
	}
	p.samples = make([]Sample, len(recs))
	var wg sync.WaitGroup
	for i, rec := range recs {
		wg.Go(func() { p.samples[i] = c.fetch(ctx, rec) })
	}
	wg.Wait()
	return p
}

// fetch reads one instance's /stats within Timeout.
func (c *Collector) fetch(ctx context.Context, rec registry.Record) Sample {
	s := Sample{Record: rec}
	if rec.Admin == "" {
		s.Err = "its record has no admin address (it does not serve /stats)"
		return s
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	u := url.URL{Scheme: "http", Host: rec.Admin, Path: window.StatsPath}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		s.Err = err.Error()
		return s
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		s.Err = c.why(ctx, err)
		return s
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.Err = fmt.Sprintf("GET %s: %s", u.String(), resp.Status)
		return s
	}
	var st window.Stats
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatsBytes)).Decode(&st); err != nil {
		if ctx.Err() != nil {
			s.Err = c.why(ctx, err)
		} else {
			s.Err = fmt.Sprintf("GET %s: not a stats document: %v", u.String(), err)
		}
		return s
	}
	s.Stats = &st
	return s
}

// why says in a few words why a request to an instance failed.
func (c *Collector) why(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("timed out after %v", c.cfg.Timeout)
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Error()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
