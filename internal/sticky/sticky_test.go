package sticky

import (
	"context"
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
)

func TestOwn(t *testing.T) {
	if o := OwnOf(context.Background()); o != nil {
		t.Fatalf("OwnOf(Background) = %v, want nil", o)
	}
	mark := &Own{Channel: "trade", Color: deploy.Blue}
	if o := OwnOf(WithOwn(context.Background(), mark)); o != mark {
		t.Fatalf("OwnOf(WithOwn(mark)) = %v, want the mark", o)
	}
	if Index(deploy.Blue) != 0 || Index(deploy.Green) != 1 {
		t.Fatal("Index/Other disagree with blue=0, green=1")
	}
}

func TestRedecide(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"trade=blue", "trade=green"},
		{"pay=blue&trade=blue&x", "pay=blue&trade=green&x"},
		{"trade=red&trade=blue&trade=green", "trade=red&trade=green"},
		{"pay=blue", "pay=blue&trade=green"},
		{"", "trade=green"},
	} {
		if got := Redecide(c.in, "trade", deploy.Green); got != c.want {
			t.Errorf("Redecide(%q, trade, green) = %q, want %q", c.in, got, c.want)
		}
		if got, _ := Lookup(Redecide(c.in, "trade", deploy.Green), "trade"); got != deploy.Green {
			t.Errorf("Lookup after Redecide(%q) = %q, want green", c.in, got)
		}
	}
}
