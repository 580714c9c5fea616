package queue_test

import (
	"testing"

	"github.com/redisbroker/broker/internal/redistest"
)

func TestMain(m *testing.M) {
	redistest.Main(m)
}
