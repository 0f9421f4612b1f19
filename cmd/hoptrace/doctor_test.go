package main

import "testing"

func TestDoctorUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"hoptrace", "doctor", "--output", "yaml"},
		{"hoptrace", "doctor", "extra"},
	} {
		if got := run(args); got != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, got, exitUsage)
		}
	}
}
