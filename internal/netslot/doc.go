// Package netslot gives every sandbox its own network: a slot.
package netslot
