//go:build race

package main

// raceEnabled makes TestMain build the demo with the race detector too.
const raceEnabled = true
