"""Turns environment specifications into running containers, and keeps them so."""
