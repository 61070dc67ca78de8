package device_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/warden-iot/warden/device"
)

func Example() {
	// A throwaway broker and credentials stand in for Warden here; a real
	// device reads the files it was provisioned with.
	certFile, keyFile, caFile, server, stop := device.StartExampleBroker()
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	cert, roots, err := device.LoadCredentials(certFile, keyFile, caFile)
	if err != nil {
		log.Fatal(err)
	}
	c, err := device.Connect(ctx, device.Config{
		Servers:     []string{server},
		Certificate: cert,
		RootCAs:     roots,
	})
	if err != nil {
		log.Fatal(err) // a *device.RefusedError if Warden refuses the device
	}
	defer c.Close(context.Background())

	commands := make(chan device.Message, 1)
	err = c.SubscribeDown(ctx, "echo", 1, func(m device.Message) { commands <- m })
	if err != nil {
		log.Fatal(err)
	}
	if err := c.PublishUp(ctx, "echo", []byte("hello"), 1); err != nil {
		log.Fatal(err)
	}
	select {
	case m := <-commands:
		fmt.Printf("%s on channel %q\n", m.Payload, m.Channel)
	case <-ctx.Done():
		log.Fatal("no answer from Warden")
	}
	// Output: hello on channel "echo"
}

func ExampleBackoff() {
	// The ceiling doubles from MinBackoff up to MaxBackoff; the delay is
	// drawn uniformly below it. Here the draw is always the highest.
	highest := func(n int64) int64 { return n - 1 }
	for attempt := range 9 {
		fmt.Print(device.Backoff(time.Second, 2*time.Minute, attempt, highest), " ")
	}
	fmt.Println()
	// Output: 1s 2s 4s 8s 16s 32s 1m4s 2m0s 2m0s
}
