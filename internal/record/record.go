// Package record is the one codec of the versioned JSON records switchyard keeps in etcd
// (DESIGN.md "etcd key layout": instance records, rules, job assignments and executors).
// Every record starts with a schema version "v"; a reader decodes what it knows and refuses
// another version with an error that says which side to upgrade. The packages that own the
// records (registry, traffic, job) validate their fields and wrap the error in their own
// "malformed" sentinel with Malformed.
package record

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Header is the schema version every stored record carries. Embed it in a record's struct:
// its field is encoded as "v".
type Header struct {
	V int `json:"v"`
}

// Schema is the record's schema version. (Not Version: records have fields of that name.)
func (h Header) Schema() int { return h.V }

// Versioned is a record struct that embeds Header.
type Versioned interface{ Schema() int }

// Decode parses data into rec, then checks that rec's version is version. A record without
// "v" decodes with version 0; pass accept0 to read it as version (records written before
// they carried one).
func Decode(data []byte, version int, rec Versioned, accept0 bool) error {
	if err := json.Unmarshal(data, rec); err != nil {
		return fmt.Errorf("value %s is not a JSON record: %w", Snippet(data), err)
	}
	switch v := rec.Schema(); {
	case v == version, v == 0 && accept0:
		return nil
	case v > version:
		return fmt.Errorf("schema version \"v\":%d is newer than the %d this reader knows: a newer switchyard wrote it; upgrade this process", v, version)
	default:
		return fmt.Errorf("schema version \"v\":%d, this reader knows %d; rewrite the record with this version", v, version)
	}
}

// Snippet quotes the start of a value for an error message.
func Snippet(val []byte) string {
	const max = 64
	if len(val) > max {
		return strconv.Quote(string(val[:max])) + "…"
	}
	return strconv.Quote(string(val))
}

// Malformed wraps why a stored record was refused under the owning package's sentinel kind
// (e.g. registry.ErrMalformedRecord): its message is kind's, then err's without the package
// prefix (prefix, e.g. "registry: ") that kind already carries. errors.Is finds both.
func Malformed(kind error, prefix string, err error) error {
	return &malformedError{kind: kind, prefix: prefix, err: err}
}

type malformedError struct {
	kind   error
	prefix string
	err    error
}

func (e *malformedError) Error() string {
	return e.kind.Error() + ": " + strings.TrimPrefix(e.err.Error(), e.prefix)
}

func (e *malformedError) Unwrap() []error { return []error{e.kind, e.err} }
