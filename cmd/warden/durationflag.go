package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/warden-iot/warden/internal/config"
)

// durationVar stands in for pflag's FlagSet.DurationVar in every command, so
// that lifetimes, expiries and timeouts accept days ("--lifetime 30d",
// "--ttl 90d") exactly as the configuration file and warden serve's flags
// do (config.ParseDuration); pflag's parser has no day unit.
func durationVar(fs *pflag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	config.DurationVar(fs, p, name, value, usage)
}
