package broker_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"

	"github.com/redisbroker/broker"
)

func ExampleOpen() {
	// An in-memory server stands in for Redis; a deployment passes its
	// REDIS_URL, for example rediss://app:password@cache.example.com:6380/0.
	m, err := miniredis.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	m.RequireUserAuth("app", "s3cr3t")
	rawURL := "redis://app:s3cr3t@" + m.Addr() + "/0"

	ctx := context.Background()
	c, err := broker.Open(rawURL)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	// Check pings the server. With a logger it would also warn about an
	// eviction policy that can delete queue keys.
	if err := broker.Check(ctx, c, nil); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("connected")

	// Errors and logs carry the redacted URL only.
	_, err = broker.Open("redis://app:s3cr3t@cache.example.com:6379/0?skip_verify=true")
	fmt.Println(err)
	fmt.Println(broker.RedactURL("redis://app:s3cr3t@cache.example.com:6379/0"))
	// Output:
	// connected
	// broker: open redis://app:xxxxx@cache.example.com:6379/0?skip_verify=true: invalid option: skip_verify needs a TLS URL (rediss://)
	// redis://app:xxxxx@cache.example.com:6379/0
}
