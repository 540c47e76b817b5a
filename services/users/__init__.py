"""The users service. User profiles and preferences, created from UserRegistered."""
