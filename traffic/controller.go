package traffic

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/kvwatch"
	"github.com/switchyard-go/switchyard/registry"
)

// Errors the controller returns; branch with errors.Is.
var (
	// ErrConflict: the rules changed between the controller's read and its write (another
	// operator). Nothing was written; read the rules again and decide again.
	ErrConflict = errors.New("traffic: rules changed concurrently; nothing was written, re-read and retry")
	// ErrUnknownChannel: the channel has no rule.
	ErrUnknownChannel = errors.New("traffic: unknown channel")
	// ErrNotOpen: the channel has no release open.
	ErrNotOpen = errors.New("traffic: no release open in channel")
	// ErrAlreadyOpen: the channel already has a release open.
	ErrAlreadyOpen = errors.New("traffic: release already open in channel")
	// ErrAppInOpenChannel: an app is already in another channel with a release open.
	ErrAppInOpenChannel = errors.New("traffic: app already in another open channel")
)

// Controller writes rules: what the operator CLI and release tooling call. Every write is
// validated first and is a compare-and-swap against the revision of the read it was decided
// on, covering every rule, so two operators never overwrite each other silently.
type Controller struct {
	cfg Config
	now func() time.Time
}

// NewController returns a Controller. It only needs Client, Prefix and RequestTimeout from cfg.
func NewController(cfg Config) (*Controller, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Controller{cfg: cfg, now: time.Now}, nil
}

// Open opens a release in channel for apps, at 50 % (no traffic moves until Shift). The
// channel's rule is created if it does not exist; its apps are replaced by apps. Refused if
// the channel is already open or an app is in another open channel.
func (c *Controller) Open(ctx context.Context, channel string, apps []string) (Rule, error) {
	next, err := NewRule(channel, apps, true, EvenSplit)
	if err != nil {
		return Rule{}, err
	}
	return c.update(ctx, channel, func(cur Rule, exists bool, all []Rule) (Rule, error) {
		if exists && cur.Releasing {
			return Rule{}, fmt.Errorf("%w %q (blue at %g%%); finish it first", ErrAlreadyOpen, channel, cur.BluePercent)
		}
		for _, r := range all {
			if r.Channel == channel || !r.Releasing {
				continue
			}
			for _, app := range next.Apps {
				if r.Has(app) {
					return Rule{}, fmt.Errorf("%w: %q is in %q; finish that release first", ErrAppInOpenChannel, app, r.Channel)
				}
			}
		}
		return next, nil
	})
}

// Shift sets the blue percent of an open release: 0 drains blue, 100 drains green, 1 is a
// 1 % canary on blue.
func (c *Controller) Shift(ctx context.Context, channel string, bluePercent float64) (Rule, error) {
	if err := ValidatePercent(bluePercent); err != nil {
		return Rule{}, err
	}
	return c.update(ctx, channel, func(cur Rule, exists bool, _ []Rule) (Rule, error) {
		if err := needOpen(channel, cur, exists); err != nil {
			return Rule{}, err
		}
		cur.BluePercent = bluePercent
		return cur, nil
	})
}

// Finish closes the release and sets the split back to 50/50.
func (c *Controller) Finish(ctx context.Context, channel string) (Rule, error) {
	return c.update(ctx, channel, func(cur Rule, exists bool, _ []Rule) (Rule, error) {
		if err := needOpen(channel, cur, exists); err != nil {
			return Rule{}, err
		}
		cur.Releasing, cur.BluePercent = false, EvenSplit
		return cur, nil
	})
}

func needOpen(channel string, cur Rule, exists bool) error {
	switch {
	case !exists:
		return fmt.Errorf("%w %q; open it first", ErrUnknownChannel, channel)
	case !cur.Releasing:
		return fmt.Errorf("%w %q; open it first", ErrNotOpen, channel)
	}
	return nil
}

// Get reads a channel's rule from etcd.
func (c *Controller) Get(ctx context.Context, channel string) (Rule, error) {
	all, _, _, err := c.read(ctx)
	if err != nil {
		return Rule{}, err
	}
	for _, r := range all {
		if r.Channel == channel {
			return r, nil
		}
	}
	return Rule{}, fmt.Errorf("%w %q", ErrUnknownChannel, channel)
}

// List reads every rule from etcd, by channel name.
func (c *Controller) List(ctx context.Context) ([]Rule, error) {
	all, _, _, err := c.read(ctx)
	return all, err
}

// read returns every valid rule, the mod revision of each rule's key, and the revision of
// the read. A malformed rule is an error here: an operator must see it, not have it skipped.
func (c *Controller) read(ctx context.Context) ([]Rule, map[string]int64, int64, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.cfg.Client.Get(rctx, ChannelsPrefix(c.cfg.Prefix), clientv3.WithPrefix())
	if err != nil {
		return nil, nil, 0, c.etcdErr(ctx, err)
	}
	var all []Rule
	modRevs := make(map[string]int64, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		channel := strings.TrimPrefix(string(kv.Key), ChannelsPrefix(c.cfg.Prefix))
		r, err := Unmarshal(kv.Value)
		if err == nil && r.Channel != channel {
			err = fmt.Errorf("record says channel %q", r.Channel)
		}
		if err != nil {
			return nil, nil, 0, fmt.Errorf("traffic: rule at %s is malformed; fix or delete it: %w", kv.Key, err)
		}
		all = append(all, r)
		modRevs[channel] = kv.ModRevision
	}
	slices.SortFunc(all, func(a, b Rule) int { return strings.Compare(a.Channel, b.Channel) })
	return all, modRevs, resp.Header.Revision, nil
}

// update reads every rule, lets decide compute the channel's next rule, and writes it only if
// no rule changed since the read.
func (c *Controller) update(ctx context.Context, channel string, decide func(cur Rule, exists bool, all []Rule) (Rule, error)) (Rule, error) {
	if err := registry.ValidateName("channel", channel); err != nil {
		return Rule{}, &RuleError{Field: "channel", Value: fmt.Sprintf("%q", channel), Rule: ruleOf(err)}
	}
	all, modRevs, rev, err := c.read(ctx)
	if err != nil {
		return Rule{}, err
	}
	var cur Rule
	exists := false
	for _, r := range all {
		if r.Channel == channel {
			cur, exists = r, true
		}
	}
	next, err := decide(cur, exists, all)
	if err != nil {
		return Rule{}, err
	}
	next.UpdatedAt = c.now().UTC().Truncate(time.Millisecond)
	val, err := Marshal(next)
	if err != nil {
		return Rule{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	// No rule was written or created since the read (every key under channels/ is older
	// than it), and the channel's own key is as read (this also catches its deletion; a
	// missing key has mod revision 0). Other channels being deleted cannot invalidate the
	// decision.
	prefix, key := ChannelsPrefix(c.cfg.Prefix), Key(c.cfg.Prefix, channel)
	resp, err := c.cfg.Client.Txn(wctx).
		If(clientv3.Compare(clientv3.ModRevision(prefix), "<", rev+1).WithPrefix(),
			clientv3.Compare(clientv3.ModRevision(key), "=", modRevs[channel])).
		Then(clientv3.OpPut(key, string(val))).
		Commit()
	if err != nil {
		return Rule{}, c.etcdErr(ctx, err)
	}
	if !resp.Succeeded {
		return Rule{}, fmt.Errorf("%w (channel %q)", ErrConflict, channel)
	}
	return next, nil
}

func (c *Controller) etcdErr(ctx context.Context, err error) error {
	err = kvwatch.Err(ctx, err)
	if errors.Is(err, ErrEtcdUnavailable) {
		return fmt.Errorf("traffic: %w", err)
	}
	return err
}
