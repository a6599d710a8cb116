package traffic

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
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
//
// A call takes at most ctx's time, or RequestTimeout when ctx has no deadline. Each etcd
// request in it is an attempt of 500 ms, doubling up to RequestTimeout, and one that etcd
// does not answer is made again; a write carries a write id (Rule.Op), so one whose answer
// was lost reports done when it finds it was applied, and an *OtherWriteError when another
// write changed the rule instead (package doc, "Controller calls and etcd"). Safe for
// concurrent use.
type Controller struct {
	cfg Config
	now func() time.Time
}

// NewController returns a Controller. It only needs Client, Prefix and RequestTimeout from cfg;
// RequestTimeout bounds each attempt, and a call whose ctx has no deadline.
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
	return c.update(ctx, "open", channel, opts, func(cur Rule, exists bool, s scan) (Rule, error) {
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
	return c.update(ctx, "shift", channel, opts, func(cur Rule, exists bool, _ scan) (Rule, error) {
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
	return c.update(ctx, "finish", channel, opts, func(cur Rule, exists bool, _ scan) (Rule, error) {
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
	s, err := c.readAll(ctx)
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
	s, err := c.readAll(ctx)
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
	s, err := c.readAll(ctx)
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
	k := c.begin(ctx, fmt.Sprintf("delete of channel %q", channel), channel)
	defer k.cancel()
	s, err := c.read(k)
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
	var resp *clientv3.TxnResponse
	err = k.do(true, func(actx context.Context) (err error) {
		resp, err = c.cfg.Client.Txn(actx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
			Then(clientv3.OpDelete(key)).
			Else(clientv3.OpGet(key)).
			Commit()
		return err
	})
	if err != nil {
		return err
	}
	if resp.Succeeded {
		return nil
	}
	if !k.sent {
		return fmt.Errorf("%w (channel %q)", ErrConflict, channel)
	}
	// An earlier attempt went unanswered and the key has changed since the read: if its
	// first change was a delete, the version read is deleted, which is what was asked. A
	// delete carries no write id, so another Delete of the same version at the same moment
	// is not told apart from this one; both report success.
	first, err := k.firstChange(key, s.rev)
	if err != nil {
		return k.historyErr(err)
	}
	if first.Type == clientv3.EventTypeDelete {
		return nil
	}
	return c.otherWrite(k, channel, current(resp), nil, s)
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

// readAll is a call that reads every key under the channels prefix.
func (c *Controller) readAll(ctx context.Context) (scan, error) {
	k := c.begin(ctx, "read of the rules", "")
	defer k.cancel()
	return c.read(k)
}

// read reads every key under the channels prefix, within call k. A key that cannot be read
// is kept apart in bad, not skipped: each operation decides whether it needs it.
func (c *Controller) read(k *call) (scan, error) {
	prefix := deploy.ChannelsPrefix(c.cfg.Prefix)
	var resp *clientv3.GetResponse
	err := k.do(false, func(ctx context.Context) (err error) {
		resp, err = c.cfg.Client.Get(ctx, prefix, clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return scan{}, err
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

// decision computes a channel's next rule from its current one and every rule read.
type decision func(cur Rule, exists bool, s scan) (Rule, error)

// update reads every rule, lets decide compute the channel's next rule, and writes it only if
// no rule changed since the read. An unreadable key of the channel itself refuses every
// operation (its state is unknown); other unreadable keys are decide's to judge.
//
// The rule written carries a new write id (Rule.Op). An attempt of the write that etcd did
// not answer is sent again, unchanged: the compare-and-swap applies it at most once. When the
// swap fails, the key as it is now (read in the same transaction) tells what happened: it
// carries this call's id — an earlier attempt was applied, and that is success; or the key
// changed since the read, and its first change in etcd's history says whether that was this
// call's write (success, then changed by someone else) or another write (OtherWriteError,
// with the answer the call gets against the rule as it is now); or the key is as read and
// another rule changed (ErrConflict, as for a call that lost no answer).
func (c *Controller) update(ctx context.Context, op, channel string, opts []WriteOption, decide decision) (Rule, error) {
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
	k := c.begin(ctx, fmt.Sprintf("%s of channel %q", op, channel), channel)
	defer k.cancel()
	s, err := c.read(k)
	if err != nil {
		return Rule{}, err
	}
	if u, ok := s.unreadable(channel); ok {
		return Rule{}, fmt.Errorf("traffic: %w", unreadableErr(u))
	}
	cur, exists := s.rule(channel)
	next, err := decide(cur, exists, s)
	if err != nil {
		return Rule{}, err
	}
	next.UpdatedAt = c.now().UTC().Truncate(time.Millisecond)
	next.Reason = w.reason // each write says its own reason, or none
	next.Op = newOp()
	val, err := Marshal(next)
	if err != nil {
		return Rule{}, err
	}
	// No rule was written or created since the read (every key under channels/ is older
	// than it), and the channel's own key is as read (this also catches its deletion; a
	// missing key has mod revision 0). Other channels being deleted cannot invalidate the
	// decision.
	prefix, key := deploy.ChannelsPrefix(c.cfg.Prefix), deploy.ChannelKey(c.cfg.Prefix, channel)
	var resp *clientv3.TxnResponse
	err = k.do(true, func(actx context.Context) (err error) {
		resp, err = c.cfg.Client.Txn(actx).
			If(clientv3.Compare(clientv3.ModRevision(prefix), "<", s.rev+1).WithPrefix(),
				clientv3.Compare(clientv3.ModRevision(key), "=", s.modRevs[channel])).
			Then(clientv3.OpPut(key, string(val))).
			Else(clientv3.OpGet(key)).
			Commit()
		return err
	})
	if err != nil {
		return Rule{}, err
	}
	if resp.Succeeded {
		return next, nil
	}
	now := current(resp)
	if now != nil {
		if r, err := Unmarshal(now.Value); err == nil && r.Op == next.Op {
			return r, nil // an earlier attempt was applied; its answer was lost
		}
	}
	if !k.sent {
		return Rule{}, fmt.Errorf("%w (channel %q)", ErrConflict, channel)
	}
	if (now == nil && !exists) || (now != nil && now.ModRevision == s.modRevs[channel]) {
		// The key is as read, so no attempt was applied (one would have changed it): another
		// rule changed, a plain conflict. (An Open whose create another call deleted again
		// while its answer was lost would look the same; the rule is gone either way.)
		return Rule{}, fmt.Errorf("%w (channel %q)", ErrConflict, channel)
	}
	first, err := k.firstChange(key, s.rev)
	if err != nil {
		return Rule{}, k.historyErr(err)
	}
	if first.Type == clientv3.EventTypePut {
		if r, err := Unmarshal(first.Kv.Value); err == nil && r.Op == next.Op {
			return r, nil // applied, and changed since by another write
		}
	}
	return Rule{}, c.otherWrite(k, channel, now, decide, s)
}

// rule returns the channel's rule in s, if it was read.
func (s scan) rule(channel string) (Rule, bool) {
	for _, r := range s.all {
		if r.Channel == channel {
			return r, true
		}
	}
	return Rule{}, false
}

// current is the channel's key as the failed transaction's Else branch read it, or nil.
func current(resp *clientv3.TxnResponse) *mvccpb.KeyValue {
	if len(resp.Responses) == 0 {
		return nil
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		return kvs[0]
	}
	return nil
}

// otherWrite is the answer of call k when another write changed channel's key after the
// call read it, before the call's own write could be applied: the answer the call gets
// against the key as it is now (now; nil if deleted), decided again with decide (nil:
// ErrConflict), naming the other write.
func (c *Controller) otherWrite(k *call, channel string, now *mvccpb.KeyValue, decide decision, s scan) error {
	e := &OtherWriteError{Channel: channel, what: k.what, Deleted: now == nil}
	cur, readable := Rule{}, now == nil
	if now != nil {
		if r, err := Unmarshal(now.Value); err == nil && r.Channel == channel {
			cur, readable = r, true
		}
	}
	e.Other = cur
	if decide != nil && readable {
		_, e.Err = decide(cur, now != nil, s)
	}
	if e.Err == nil {
		e.Err = fmt.Errorf("%w (channel %q)", ErrConflict, channel)
	}
	return e
}
