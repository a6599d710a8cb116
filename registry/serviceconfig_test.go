package registry_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/switchyard-go/switchyard/registry"
)

func TestServiceConfigErrorsAreEarlyAndClear(t *testing.T) {
	cases := map[[2]string]string{
		{`{"x"`, ""}: "ServiceConfig is not valid JSON",
		{"", `{}`}:   "MethodConfig must be a JSON array",
		{"{}", "[]"}: "not both",
		{"", `[{"name":[{"service":"a.B"}],"retryPolicy":{"maxAttempts":"three"}}]`}: "MethodConfig rejected by gRPC",
		{`{"loadBalancingConfig":[{"no_such_policy":{}}]}`, ""}:                      "ServiceConfig rejected by gRPC",
		{"", `[{"name":[{"service":"a.B"}],"timeout":"1x"}]`}:                        "MethodConfig rejected by gRPC",
	}
	for in, want := range cases {
		if _, err := registry.ServiceConfigOf(in[0], in[1]); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ServiceConfig %q, MethodConfig %q: err = %v, want one saying %q", in[0], in[1], err, want)
		}
	}
	for _, mc := range []string{registry.RetryPolicy("order.v1.Order/Get", "inventory.v1.Inventory"), "[]"} {
		sc, err := registry.ServiceConfigOf("", mc)
		if err != nil || !json.Valid([]byte(sc)) || !strings.Contains(sc, `"switchyard_weighted"`) {
			t.Errorf("MethodConfig %s: %q, %v; want it merged into the default", mc, sc, err)
		}
	}
	if sc, err := registry.ServiceConfigOf("", ""); err != nil || sc != registry.DefaultServiceConfig {
		t.Errorf("no options: %q, %v; want DefaultServiceConfig", sc, err)
	}
}

// FuzzServiceConfig: any ServiceConfig / MethodConfig is refused with an error or gives a
// service config that is valid JSON (and gRPC accepted it); nothing panics.
func FuzzServiceConfig(f *testing.F) {
	f.Add("", registry.RetryPolicy("order.v1.Order"))
	f.Add(`{"loadBalancingConfig":[{"switchyard_weighted":{"stickyWait":"1s"}}]}`, "")
	f.Add("", `[{"name":[{}],"waitForReady":true}]`)
	f.Add("", `[1,2]`)
	f.Add("", `]`)
	f.Add(`{"methodConfig":[{"name":[{"service":"a"}],"timeout":"-1s"}]}`, "")
	f.Fuzz(func(t *testing.T, serviceConfig, methodConfig string) {
		sc, err := registry.ServiceConfigOf(serviceConfig, methodConfig)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "registry: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		if !json.Valid([]byte(sc)) {
			t.Fatalf("accepted, but the service config is not JSON: %q", sc)
		}
	})
}
