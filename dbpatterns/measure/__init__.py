"""What the lab measures: the bench, the load, the frames on the wire, the profile, the
costs and the comparisons."""
