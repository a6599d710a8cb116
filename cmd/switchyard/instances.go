package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
)

func instancesCmd(ctx context.Context, e env) error {
	app, err := e.arg(1, "app name")
	if err != nil {
		return err
	}
	return instances(ctx, e.o, e.cli, app, e.out, e.err)
}

type instanceJSON struct {
	ID            string  `json:"id"`
	Addr          string  `json:"addr"`
	Color         string  `json:"color"`
	Version       string  `json:"version"`
	Channel       string  `json:"channel"`
	Weight        float64 `json:"weight"`
	TrafficWeight float64 `json:"traffic_weight"`
	WarmupLeftMS  int64   `json:"warmup_left_ms"`
	AgeMS         int64   `json:"age_ms"`
	Degraded      string  `json:"degraded,omitempty"` // why it cannot keep its color's requests on its color
	Admin         string  `json:"admin,omitempty"`    // its admin server (host:port: /status, /stats)
}

func instances(ctx context.Context, o opts, cli *clientv3.Client, app string, out, errOut io.Writer) error {
	if err := deploy.ValidateName("app", app); err != nil {
		return usageError{err.Error()}
	}
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	recs, skipped, err := registry.List(rctx, cli, o.prefix, app)
	if err != nil {
		return err
	}
	for _, s := range skipped {
		fmt.Fprintf(errOut, "switchyard: skipping malformed record %s (fix or delete it): %v\n", s.Key, s.Err)
	}
	now := time.Now()
	var list []instanceJSON
	for _, in := range recs {
		left := max(0, in.StartTime.Add(in.Warmup).Sub(now))
		list = append(list, instanceJSON{in.ID, in.Addr, string(in.Color), in.Version, in.Channel, in.Weight, in.TrafficWeight,
			left.Milliseconds(), now.Sub(in.StartTime).Milliseconds(), in.Degraded, in.Admin})
	}
	if o.output == "json" {
		if list == nil {
			list = []instanceJSON{}
		}
		return json.NewEncoder(out).Encode(list)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tADMIN\tCOLOR\tVERSION\tCHANNEL\tWEIGHT\tTRAFFIC WEIGHT\tWARMUP LEFT\tAGE\tDEGRADED")
	for _, i := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%g\t%.4g\t%v\t%v\t%s\n", i.ID, i.Addr, dash(i.Admin), dash(i.Color), dash(i.Version), dash(i.Channel),
			i.Weight, i.TrafficWeight, time.Duration(i.WarmupLeftMS)*time.Millisecond, (time.Duration(i.AgeMS) * time.Millisecond).Round(time.Second), dash(i.Degraded))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
