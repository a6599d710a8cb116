package sticky

import (
	"context"
	"testing"
)

func TestOwn(t *testing.T) {
	if o := OwnOf(context.Background()); o != nil {
		t.Fatalf("OwnOf(Background) = %v, want nil", o)
	}
	mark := &Own{Channel: "trade", Color: Blue}
	if o := OwnOf(WithOwn(context.Background(), mark)); o != mark {
		t.Fatalf("OwnOf(WithOwn(mark)) = %v, want the mark", o)
	}
	if Index(Blue) != 0 || Index(Green) != 1 || Other(Blue) != Green || Other(Green) != Blue {
		t.Fatal("Index/Other disagree with blue=0, green=1")
	}
}
