"""The Snowflake profile: a drop-in replacement for Tor's Snowflake broker (Go, v2.5.1 / HEAD)."""

from rendezvous_snowflake.profile import SnowflakeProfile, SnowflakeSettings

profile = SnowflakeProfile()

__all__ = ["SnowflakeProfile", "SnowflakeSettings", "profile"]
