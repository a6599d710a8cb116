package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
	"github.com/switchyard-go/switchyard/traffic"
)

func channelOpen(ctx context.Context, e env) error {
	return channelWrite(ctx, e, func(ctl *traffic.Controller, ch string) (traffic.Rule, error) {
		if e.o.apps == "" {
			return traffic.Rule{}, usageError{"channel open needs --apps a,b"}
		}
		return ctl.Open(ctx, ch, strings.Split(e.o.apps, ","), e.reason()...)
	})
}

func channelShift(ctx context.Context, e env) error {
	return channelWrite(ctx, e, func(ctl *traffic.Controller, ch string) (traffic.Rule, error) {
		p, err := strconv.ParseFloat(e.o.blue, 64)
		if e.o.blue == "" || err != nil {
			return traffic.Rule{}, usageError{fmt.Sprintf("channel shift needs --blue <percent from 0 to 100>, got %q", e.o.blue)}
		}
		return ctl.Shift(ctx, ch, p, e.reason()...)
	})
}

func channelFinish(ctx context.Context, e env) error {
	return channelWrite(ctx, e, func(ctl *traffic.Controller, ch string) (traffic.Rule, error) {
		return ctl.Finish(ctx, ch, e.reason()...)
	})
}

// reason is the write option of --reason, if given.
func (e env) reason() []traffic.WriteOption {
	if e.o.reason == "" {
		return nil
	}
	return []traffic.WriteOption{traffic.Reason(e.o.reason)}
}

// channelWrite runs one write of the controller on the channel named by the third argument
// and prints the rule it left, then warns about unreadable rule keys.
func channelWrite(ctx context.Context, e env, write func(*traffic.Controller, string) (traffic.Rule, error)) error {
	ch, ctl, err := e.channel()
	if err != nil {
		return err
	}
	r, err := write(ctl, ch)
	if err != nil {
		return err
	}
	if err := printRules(e.out, e.o, []traffic.Rule{r}); err != nil {
		return err
	}
	// The write is done; the warnings are a courtesy, so a failed read is not reported.
	if _, bad, err := ctl.Scan(ctx); err == nil {
		warnUnreadable(e.err, bad)
	}
	return nil
}

// channel returns the channel the command names (its third argument) and a Controller.
func (e env) channel() (string, *traffic.Controller, error) {
	ch, err := e.arg(2, "channel name")
	if err != nil {
		return "", nil, err
	}
	ctl, err := e.controller()
	return ch, ctl, err
}

// channelStatus is channel status [<channel>] and channel list.
func channelStatus(ctx context.Context, e env) error {
	ctl, err := e.controller()
	if err != nil {
		return err
	}
	rules, bad, err := ctl.Scan(ctx)
	if err != nil {
		return err
	}
	if len(e.pos) > 2 {
		r, err := ctl.Get(ctx, e.pos[2])
		if err != nil {
			return err
		}
		rules = []traffic.Rule{r}
	}
	warnUnreadable(e.err, bad)
	return printRules(e.out, e.o, rules)
}

func channelDelete(ctx context.Context, e env) error {
	ch, ctl, err := e.channel()
	if err != nil {
		return err
	}
	return deleteRule(ctx, e.o, e.cli, ctl, ch, e.out)
}

// watchCmd follows a channel's events until ctx ends.
func watchCmd(ctx context.Context, e env) error {
	ch, err := e.arg(1, "channel name")
	if err != nil {
		return err
	}
	rules, err := traffic.NewRules(ctx, e.cfg)
	if err != nil {
		return err
	}
	defer rules.Close()
	enc := json.NewEncoder(e.out)
	done := rules.Subscribe(ch, func(ev traffic.Event) {
		if e.o.output == "json" {
			_ = enc.Encode(map[string]any{"channel": ev.Channel, "event": ev.Kind.String(), "old": ev.Old, "new": ev.New, "reason": ev.Rule.Reason})
			return
		}
		fmt.Fprintf(e.out, "%s  %s\n", time.Now().Format("15:04:05.000"), ev)
	})
	defer done()
	<-ctx.Done()
	return nil
}

// warnUnreadable prints a warning per rule key that cannot be read, naming it and the command
// that deletes it.
func warnUnreadable(errOut io.Writer, bad []traffic.Unreadable) {
	for _, u := range bad {
		apps := "any app (its apps cannot be read)"
		if u.Apps != nil {
			apps = strings.Join(u.Apps, ",")
		}
		fmt.Fprintf(errOut, "switchyard: warning: rule at %s cannot be read and is not shown (%v); it may name %s: instances of those apps that start now wait until it is repaired or deleted, and open refuses those apps; repair it, or delete it with: switchyard channel delete %s --yes\n",
			u.Key, u.Err, apps, shellQuote(u.Channel))
	}
}

// deleteRule is channel delete: with --yes it deletes the channel's rule key (an open
// release only with --force too); without, it says what it would delete and asks for --yes.
func deleteRule(ctx context.Context, o opts, cli *clientv3.Client, ctl *traffic.Controller, ch string, out io.Writer) error {
	key := deploy.ChannelKey(o.prefix, ch)
	if !o.yes {
		rctx, cancel := context.WithTimeout(ctx, o.timeout)
		defer cancel()
		resp, err := cli.Get(rctx, key)
		if err != nil {
			return fmt.Errorf("%w: %w", registry.ErrEtcdUnavailable, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("%w %q: no key %s", traffic.ErrUnknownChannel, ch, key)
		}
		val := resp.Kvs[0].Value
		what := "rule"
		r, err := traffic.Unmarshal(val)
		switch {
		case err != nil:
			what = fmt.Sprintf("unreadable rule (%v)", err)
		case r.Channel != ch:
			what = fmt.Sprintf("misfiled rule (it says channel %q)", r.Channel)
		case r.Releasing:
			what = fmt.Sprintf("rule with a release OPEN at blue %g%% (deleting it ends the release at once: traffic goes straight back to 50/50 and its apps leave the channel; finish it instead, or add --force too)", r.BluePercent)
		default:
			what = "closed rule, apps " + strings.Join(r.Apps, ",")
		}
		shown := string(val)
		if len(shown) > 200 {
			shown = shown[:200] + "…"
		}
		return confirmError{fmt.Sprintf("channel delete would delete %s: %s, value %q; run it again with --yes to delete it", key, what, shown)}
	}
	if err := ctl.Delete(ctx, ch, o.force); err != nil {
		if errors.Is(err, traffic.ErrAlreadyOpen) {
			return fmt.Errorf("%w (--force)", err)
		}
		return err
	}
	fmt.Fprintf(out, "deleted %s\n", key)
	return nil
}

// shellQuote quotes a channel name for a command line when it is not a plain name.
func shellQuote(s string) string {
	if deploy.ValidateName("channel", s) == nil {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

type ruleJSON struct {
	Channel     string    `json:"channel"`
	Apps        []string  `json:"apps"`
	Releasing   bool      `json:"releasing"`
	BluePercent float64   `json:"blue_percent"`
	UpdatedAt   time.Time `json:"updated_at"`
	Reason      string    `json:"reason,omitempty"`
	Op          string    `json:"op,omitempty"` // the write id of the rule's last change
}

func printRules(out io.Writer, o opts, rules []traffic.Rule) error {
	if o.output == "json" {
		js := make([]ruleJSON, 0, len(rules))
		for _, r := range rules {
			js = append(js, ruleJSON{r.Channel, r.Apps, r.Releasing, r.BluePercent, r.UpdatedAt, r.Reason, r.Op})
		}
		return json.NewEncoder(out).Encode(js)
	}
	for _, r := range rules {
		state := "closed"
		if r.Releasing {
			state = "releasing"
		}
		p := traffic.EffectivePercent(r)
		fmt.Fprintf(out, "%-16s %-9s apps=%s\n  %s\n", r.Channel, state, strings.Join(r.Apps, ","), bar(p))
		if r.Reason != "" {
			fmt.Fprintf(out, "  last change: %s\n", r.Reason)
		}
	}
	return nil
}

// bar draws blue's share, e.g. "blue   1.0% █░░░…░ 99.0% green".
func bar(p float64) string {
	const width = 40
	n := int(math.Round(p / 100 * width))
	return fmt.Sprintf("blue %5.1f%% %s%s %5.1f%% green", p, strings.Repeat("█", n), strings.Repeat("░", width-n), 100-p)
}
