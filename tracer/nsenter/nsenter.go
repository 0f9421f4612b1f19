// Package nsenter runs code inside another network namespace: the calling
// goroutine's OS thread enters it, runs the function and comes back.
// Sockets created inside stay in that namespace for their whole life,
// whichever thread uses them later, which is how hoptrace sends probes from
// a container without any tool in its image.
package nsenter

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a locked OS thread inside the network namespace at path
// and moves the thread back afterwards. If the way back fails, the thread
// stays locked and the runtime discards it when the goroutine ends, so no
// other goroutine ever runs in the wrong namespace.
func Do(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	defer func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}
