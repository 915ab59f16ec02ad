"""Chats: messages that reference data, per-chat workspaces, and code run in a sandbox."""

from datasources.chat.models import Event
from datasources.chat.refs import DataRef, parse_mentions
from datasources.chat.service import ChatService

__all__ = ["ChatService", "DataRef", "Event", "parse_mentions"]
