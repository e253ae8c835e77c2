"""Next-app use case: which app a user opens right after unlocking the phone."""
