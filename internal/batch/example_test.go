package batch_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/redisbroker/broker/internal/batch"
)

func ExampleCoalescer() {
	// A publisher would write items with one pipeline here.
	flush := func(_ context.Context, items []string) []error {
		errs := make([]error, len(items))
		for i, item := range items {
			if item == "" {
				errs[i] = errors.New("empty message")
			}
		}
		return errs
	}
	c := batch.New(flush, batch.Options{})
	ctx := context.Background()
	fmt.Println(c.Do(ctx, "hello"))
	fmt.Println(c.Do(ctx, ""))
	// Output:
	// <nil>
	// empty message
}
