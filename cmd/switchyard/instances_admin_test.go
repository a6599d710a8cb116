package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/internal/testutil"
	"github.com/switchyard-go/switchyard/registry"
)

// instances shows where each instance's admin server is (the record's admin): an ADMIN
// column, "-" when the record has none, and "admin" in the JSON.
func TestInstancesShowAdmin(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	for _, in := range []registry.Record{
		{App: "order", ID: "order-1", Addr: "10.0.0.1:9000", Admin: "10.0.0.1:8081", Color: deploy.Blue},
		{App: "order", ID: "order-2", Addr: "10.0.0.2:9000", Color: deploy.Green},
	} {
		reg, err := registry.NewRegistrar(registry.Config{Client: cli, Logger: testutil.Logger(t), Instance: in})
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close(context.Background())
		if err := reg.Register(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	code, out, _ := sy(t, e, "instances", "order")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || strings.Fields(lines[0])[2] != "ADMIN" {
		t.Fatalf("instances: %d %q", code, out)
	}
	if f := strings.Fields(lines[1]); f[0] != "order-1" || f[2] != "10.0.0.1:8081" {
		t.Errorf("order-1's row shows no admin: %q", lines[1])
	}
	if f := strings.Fields(lines[2]); f[0] != "order-2" || f[2] != "-" {
		t.Errorf("order-2 has no admin; its row: %q", lines[2])
	}
	code, out, _ = sy(t, e, "instances", "order", "-o", "json")
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 {
		t.Fatalf("instances -o json: %d %q", code, out)
	}
	if list[0]["admin"] != "10.0.0.1:8081" {
		t.Errorf("order-1's admin in JSON: %v", list[0]["admin"])
	}
	if _, ok := list[1]["admin"]; ok {
		t.Errorf("order-2 has no admin, yet the JSON shows one: %q", out)
	}
}
