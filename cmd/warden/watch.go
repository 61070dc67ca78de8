package main

import (
	"context"
	"fmt"
	"time"
)

// watch runs show until it reports that there is nothing more to follow,
// then (with watch set) again every interval, a blank line between
// reports, until ctx ends. It is how `status --watch` commands follow a
// rollout or a CA rotation.
func (c *cli) watch(ctx context.Context, watch bool, every time.Duration, show func() (running bool, err error)) error {
	for {
		running, err := show()
		if err != nil || !watch || !running {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
		fmt.Fprintln(c.out)
	}
}
