"""The central controller's flow: a profile is reconciled into its Tetragon policies, its
status and conditions, with drift repair and hostname re-resolution."""
