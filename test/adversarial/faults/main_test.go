package faults

import (
	"testing"

	"github.com/warden-iot/warden/internal/wardentest"
)

func TestMain(m *testing.M) { wardentest.Main(m) }
