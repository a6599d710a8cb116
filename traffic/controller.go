package traffic

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/kvwatch"
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

// WriteOption changes how Open, Shift and Finish write the rule.
type WriteOption func(*writeOptions)

type writeOptions struct{ reason string }

// Reason records who made the change and why in the rule (Rule.Reason), so that every
// subscriber's event carries it: `switchyard watch`, the dashboard's timeline, logs. At most
// MaxReasonLen bytes of printable text; the write is refused otherwise.
func Reason(reason string) WriteOption { return func(o *writeOptions) { o.reason = reason } }

// Open opens a release in channel for apps, at 50 % (no traffic moves until Shift). The
// channel's rule is created if it does not exist; its apps are replaced by apps. Refused if
// the channel is already open or an app is in another open channel. Because that check spans
// every rule, Open also refuses while a rule key that may name one of apps cannot be read
// (see Scan; a key whose apps cannot be read at all may name any app), with an error wrapping
// ErrMalformedRule that names the key: repair it or remove it with Delete.
func (c *Controller) Open(ctx context.Context, channel string, apps []string, opts ...WriteOption) (Rule, error) {
	next, err := NewRule(channel, apps, true, EvenSplit)
	if err != nil {
		return Rule{}, err
	}
	return c.update(ctx, channel, opts, func(cur Rule, exists bool, s scan) (Rule, error) {
		if exists && cur.Releasing {
			return Rule{}, fmt.Errorf("%w %q (blue at %g%%); finish it first", ErrAlreadyOpen, channel, cur.BluePercent)
		}
		for _, u := range s.bad {
			for _, app := range next.Apps {
				if u.mayName(app) {
					return Rule{}, fmt.Errorf("traffic: cannot check that %q is in no other open channel: %w", app, unreadableErr(u))
				}
			}
		}
		for _, r := range s.all {
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
// 1 % canary on blue. Unreadable keys of other channels do not hold it up.
func (c *Controller) Shift(ctx context.Context, channel string, bluePercent float64, opts ...WriteOption) (Rule, error) {
	if err := validatePercent(bluePercent); err != nil {
		return Rule{}, err
	}
	return c.update(ctx, channel, opts, func(cur Rule, exists bool, _ scan) (Rule, error) {
		if err := needOpen(channel, cur, exists); err != nil {
			return Rule{}, err
		}
		cur.BluePercent = bluePercent
		return cur, nil
	})
}

// Finish closes the release and sets the split back to 50/50. Unreadable keys of other
// channels do not hold it up.
func (c *Controller) Finish(ctx context.Context, channel string, opts ...WriteOption) (Rule, error) {
	return c.update(ctx, channel, opts, func(cur Rule, exists bool, _ scan) (Rule, error) {
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

// unreadableErr is the error for an operation that needs the unreadable key u: it names the
// key and what to do, and wraps u.Err (and so ErrMalformedRule).
func unreadableErr(u Unreadable) error {
	return fmt.Errorf("rule at %s cannot be read; repair it, or delete it (Controller.Delete; switchyard channel delete %s --yes): %w", u.Key, u.Channel, u.Err)
}

// Get reads a channel's rule from etcd. It fails with an error wrapping ErrMalformedRule,
// naming the key, if the channel's own key cannot be read; other keys do not matter.
func (c *Controller) Get(ctx context.Context, channel string) (Rule, error) {
	s, err := c.read(ctx)
	if err != nil {
		return Rule{}, err
	}
	if u, ok := s.unreadable(channel); ok {
		return Rule{}, fmt.Errorf("traffic: %w", unreadableErr(u))
	}
	for _, r := range s.all {
		if r.Channel == channel {
			return r, nil
		}
	}
	return Rule{}, fmt.Errorf("%w %q", ErrUnknownChannel, channel)
}

// List reads every rule from etcd, by channel name. It is strict: if any rule key cannot be
// read it returns no rules and an error wrapping ErrMalformedRule that names the key. Scan
// returns the readable rules and the unreadable keys apart.
func (c *Controller) List(ctx context.Context) ([]Rule, error) {
	s, err := c.read(ctx)
	if err != nil {
		return nil, err
	}
	if len(s.bad) > 0 {
		return nil, fmt.Errorf("traffic: %w", unreadableErr(s.bad[0]))
	}
	return s.all, nil
}

// Scan reads every key under the channels prefix: the rules that can be read, by channel
// name, and the keys whose value cannot be read (not JSON, a schema version this reader does
// not know, an invalid rule, or a rule stored under another channel's key), by channel name,
// each with the apps its value names if they can be read leniently and the reason. It is
// what an operator looks at during an incident: one broken key hides nothing else.
// Unreadable.LastGood is always false here (the Controller keeps no history).
func (c *Controller) Scan(ctx context.Context) ([]Rule, []Unreadable, error) {
	s, err := c.read(ctx)
	if err != nil {
		return nil, nil, err
	}
	return s.all, s.bad, nil
}

// Delete removes channel's rule key. It is the way out for a key that cannot be read (Open
// refuses while one may name its apps, and instances of the apps it may name do not start;
// see Client.UnreadableFor) and for a rule nobody wants any more.
//
// Deleting the rule of an open release ends that release at once: traffic goes straight back
// to 50/50 as with Finish (subscribers get the same events), and in addition its apps leave
// the channel (their records lose it) and no rule is left to show the release existed. That
// is rarely what an operator who typed a channel name meant, so Delete refuses a readable
// rule with a release open, with an error wrapping ErrAlreadyOpen, unless force is set;
// drain with Shift and Finish instead. An unreadable key or a closed rule is deleted
// without force: an unreadable key decides nothing that anyone can read.
//
// The delete is a compare-and-swap against the key's revision as read, so a key changed in
// between is not deleted (ErrConflict). A channel without a key gives ErrUnknownChannel. The
// channel is the part of the key after the channels prefix, exactly; it is not checked as a
// name, so a key written with an invalid name can be deleted too.
func (c *Controller) Delete(ctx context.Context, channel string, force bool) error {
	if channel == "" {
		return &RuleError{Field: "channel", Value: `""`, Rule: "must not be empty"}
	}
	key := deploy.ChannelKey(c.cfg.Prefix, channel)
	s, err := c.read(ctx)
	if err != nil {
		return err
	}
	modRev, exists := s.modRevs[channel]
	if !exists {
		return fmt.Errorf("%w %q: no key %s", ErrUnknownChannel, channel, key)
	}
	if _, bad := s.unreadable(channel); !bad && !force {
		for _, r := range s.all {
			if r.Channel == channel && r.Releasing {
				return fmt.Errorf("%w %q (blue at %g%%): deleting its rule would end the release abruptly; finish it first, or force the delete",
					ErrAlreadyOpen, channel, r.BluePercent)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.cfg.Client.Txn(wctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return c.etcdErr(ctx, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w (channel %q)", ErrConflict, channel)
	}
	return nil
}

// scan is one read of every key under the channels prefix.
type scan struct {
	all     []Rule           // the readable rules, by channel
	bad     []Unreadable     // the unreadable keys, by channel
	modRevs map[string]int64 // every key's mod revision, by channel
	rev     int64            // the read's revision
}

func (s scan) unreadable(channel string) (Unreadable, bool) {
	for _, u := range s.bad {
		if u.Channel == channel {
			return u, true
		}
	}
	return Unreadable{}, false
}

// read reads every key under the channels prefix. A key that cannot be read is kept apart
// in bad, not skipped: each operation decides whether it needs it.
func (c *Controller) read(ctx context.Context) (scan, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	prefix := deploy.ChannelsPrefix(c.cfg.Prefix)
	resp, err := c.cfg.Client.Get(rctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return scan{}, c.etcdErr(ctx, err)
	}
	s := scan{modRevs: make(map[string]int64, len(resp.Kvs)), rev: resp.Header.Revision}
	for _, kv := range resp.Kvs {
		channel := strings.TrimPrefix(string(kv.Key), prefix)
		s.modRevs[channel] = kv.ModRevision
		r, err := Unmarshal(kv.Value)
		if err == nil && r.Channel != channel {
			err = malformed(fmt.Errorf("record says channel %q but is stored under %q", r.Channel, channel))
		}
		if err != nil {
			s.bad = append(s.bad, Unreadable{Key: string(kv.Key), Channel: channel, Apps: lenientApps(kv.Value), Err: err})
			continue
		}
		s.all = append(s.all, r)
	}
	slices.SortFunc(s.all, func(a, b Rule) int { return strings.Compare(a.Channel, b.Channel) })
	slices.SortFunc(s.bad, func(a, b Unreadable) int { return strings.Compare(a.Channel, b.Channel) })
	return s, nil
}

// update reads every rule, lets decide compute the channel's next rule, and writes it only if
// no rule changed since the read. An unreadable key of the channel itself refuses every
// operation (its state is unknown); other unreadable keys are decide's to judge.
func (c *Controller) update(ctx context.Context, channel string, opts []WriteOption, decide func(cur Rule, exists bool, s scan) (Rule, error)) (Rule, error) {
	if err := deploy.ValidateName("channel", channel); err != nil {
		return Rule{}, &RuleError{Field: "channel", Value: fmt.Sprintf("%q", channel), Rule: ruleOf(err)}
	}
	var w writeOptions
	for _, o := range opts {
		o(&w)
	}
	if err := validateReason(w.reason); err != nil {
		return Rule{}, err
	}
	s, err := c.read(ctx)
	if err != nil {
		return Rule{}, err
	}
	if u, ok := s.unreadable(channel); ok {
		return Rule{}, fmt.Errorf("traffic: %w", unreadableErr(u))
	}
	var cur Rule
	exists := false
	for _, r := range s.all {
		if r.Channel == channel {
			cur, exists = r, true
		}
	}
	next, err := decide(cur, exists, s)
	if err != nil {
		return Rule{}, err
	}
	next.UpdatedAt = c.now().UTC().Truncate(time.Millisecond)
	next.Reason = w.reason // each write says its own reason, or none
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
	prefix, key := deploy.ChannelsPrefix(c.cfg.Prefix), deploy.ChannelKey(c.cfg.Prefix, channel)
	resp, err := c.cfg.Client.Txn(wctx).
		If(clientv3.Compare(clientv3.ModRevision(prefix), "<", s.rev+1).WithPrefix(),
			clientv3.Compare(clientv3.ModRevision(key), "=", s.modRevs[channel])).
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
