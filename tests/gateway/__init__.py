"""Tests of the HTTP/JSON edge."""
