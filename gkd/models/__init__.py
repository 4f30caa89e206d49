"""Models: the supported encoder families (`families`), teachers loaded safely (`teacher`), students cut from
them (`student`)."""
