package config

import (
	"fmt"
	"testing"

	"github.com/spf13/pflag"
)

func TestZZHelp(t *testing.T) {
	fs := pflag.NewFlagSet("w", pflag.ContinueOnError)
	AddGlobalFlags(fs)
	AddServeFlags(fs)
	fmt.Println(fs.FlagUsages())
}
