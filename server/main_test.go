package server_test

import (
	"testing"

	"go.uber.org/goleak"
)

// No goroutine (sweeper, listener, long-poll reader) may outlive the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
