//go:build !linux

package bench

// reniceSelf changes nothing outside Linux: the control group runs at the
// priority it inherits.
func reniceSelf(int) string { return "inherited (not Linux)" }
