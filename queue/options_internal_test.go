package queue

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redisbroker/broker"
)

func TestKeys(t *testing.T) {
	tests := []struct {
		topic                                         string
		ready, delayed, dead, consumers, processingOf string
	}{
		{"orders", "orders", "{orders}:delayed", "{orders}:dead", "{orders}:consumers", "{orders}:processing:w1"},
		{"a:b", "a:b", "{a:b}:delayed", "{a:b}:dead", "{a:b}:consumers", "{a:b}:processing:w1"},
	}
	for _, tt := range tests {
		k := newKeys(tt.topic)
		assert.Equal(t, tt.ready, k.ready)
		assert.Equal(t, tt.delayed, k.delayed)
		assert.Equal(t, tt.dead, k.dead)
		assert.Equal(t, tt.consumers, k.consumers)
		assert.Equal(t, tt.processingOf, k.processingOf("w1"))
	}
}

func TestSubscriberOptions(t *testing.T) {
	tests := []struct {
		name string
		opts []SubscriberOption
		ok   bool
	}{
		{"defaults", nil, true},
		{"concurrency 0", []SubscriberOption{WithConcurrency(0)}, false},
		{"prefetch 0", []SubscriberOption{WithPrefetch(0)}, false},
		{"prefetch too big", []SubscriberOption{WithPrefetch(maxPrefetch + 1)}, false},
		{"prefetch raised to concurrency", []SubscriberOption{WithConcurrency(50), WithPrefetch(5)}, true},
		{"lease short", []SubscriberOption{WithLease(500 * time.Millisecond)}, false},
		{"attempts 0", []SubscriberOption{WithMaxAttempts(0)}, false},
		{"backoff inverted", []SubscriberOption{WithBackoff(time.Second, time.Millisecond)}, false},
		{"backoff zero", []SubscriberOption{WithBackoff(0, time.Second)}, false},
		{"block fraction", []SubscriberOption{WithBlock(1500 * time.Millisecond)}, false},
		{"block zero", []SubscriberOption{WithBlock(0)}, false},
		{"block 5s", []SubscriberOption{WithBlock(5 * time.Second)}, true},
		{"poll short", []SubscriberOption{WithPollInterval(time.Millisecond)}, false},
		{"max value 0", []SubscriberOption{WithMaxValueSize(0)}, false},
		{"name long", []SubscriberOption{WithConsumerName(string(make([]byte, 201)))}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultSubscriberConfig()
			for _, o := range tt.opts {
				o(&cfg)
			}
			err := cfg.validate()
			if tt.ok {
				require.NoError(t, err)
				assert.GreaterOrEqual(t, cfg.prefetch, cfg.concurrency)
				assert.NotNil(t, cfg.logger)
				return
			}
			require.ErrorIs(t, err, broker.ErrInvalidOption)
			assert.Contains(t, err.Error(), "queue: ")
		})
	}
}

func TestPublisherOptions(t *testing.T) {
	cfg := defaultPublisherConfig()
	WithMaxPayload(0)(&cfg)
	require.ErrorIs(t, cfg.validate(), broker.ErrInvalidOption)
	cfg = defaultPublisherConfig()
	WithRaw()(&cfg)
	require.NoError(t, cfg.validate())
	assert.True(t, cfg.raw)
	assert.Equal(t, DefaultMaxPayload, cfg.maxPayload)
}

func TestTickInterval(t *testing.T) {
	cfg := defaultSubscriberConfig()
	assert.Equal(t, DefaultPollInterval, cfg.tickInterval())
	cfg.lease = 3 * time.Second
	assert.Equal(t, time.Second, cfg.tickInterval(), "heartbeat every lease/3")
}

func TestParseDeadRecord(t *testing.T) {
	rec := deadMagic + "\x00\x00\x00\x03" + "\x00\x00\x01\x93\x00\x00\x00\x00" + "\x00\x00\x00\x04" + "oops" + "value"
	r := parseDeadRecord([]byte(rec))
	assert.Equal(t, 3, r.attempts)
	assert.Equal(t, "oops", r.reason)
	assert.Equal(t, "value", string(r.value))
	assert.False(t, r.time.IsZero())
	// A reason length overrunning the record, or no magic: the whole value.
	for _, v := range []string{deadMagic + "\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xffab", "plain"} {
		r := parseDeadRecord([]byte(v))
		assert.Equal(t, v, string(r.value))
		assert.Empty(t, r.reason)
	}
	assert.Len(t, truncateReason(string(make([]byte, 5000))), maxReason)
}
