package wire_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redisbroker/broker"
	"github.com/redisbroker/broker/internal/wire"
)

// update regenerates the golden files. Only do it for a new version: the
// existing files pin the format of values already stored in Redis.
var update = flag.Bool("update", false, "rewrite testdata/*.bin golden files")

type golden struct {
	name string
	msg  *broker.Message
}

func goldens() []golden {
	at := time.Date(2024, 5, 1, 12, 30, 45, 123456789, time.UTC)
	return []golden{
		{"v1-basic", &broker.Message{
			ID:      "01HWXYZ7K3M5N8P9QRSTVW0123",
			Payload: []byte("hello, world"),
			Attempt: 1,
			Time:    at,
		}},
		{"v1-metadata", &broker.Message{
			ID:      "01HWXYZ7K3M5N8P9QRSTVW0124",
			Payload: []byte(`{"order":42}`),
			Metadata: map[string]string{
				"content-type": "application/json",
				"trace-id":     "4bf92f3577b34da6",
				"":             "empty key",
				"empty-value":  "",
			},
			Attempt: 3,
			Time:    at,
		}},
		{"v1-empty", &broker.Message{}},
		{"v1-binary-payload", &broker.Message{
			ID:      "01HWXYZ7K3M5N8P9QRSTVW0125",
			Payload: []byte{0x00, 0xff, 'B', 'K', 0x01, 0x00, 0x80, 0xfe, 0xff},
			Attempt: 65535,
			Time:    time.Unix(0, -1).UTC(), // a negative time survives too
		}},
	}
}

func goldenPath(name string) string {
	return filepath.Join("testdata", name+".bin")
}

func TestGolden(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			got := wire.Encode(g.msg)
			if *update {
				if err := os.WriteFile(goldenPath(g.name), got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(goldenPath(g.name))
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("encoding changed: the v1 format is frozen\nwant %x\n got %x", want, got)
			}
			m, err := wire.Decode(want)
			if err != nil {
				t.Fatal(err)
			}
			requireEqualMessage(t, g.msg, m)
		})
	}
}
