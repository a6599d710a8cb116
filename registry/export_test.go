package registry

// ServiceConfigOf is serviceConfigOf, for the fuzz target of ResolverConfig's JSON options.
var ServiceConfigOf = serviceConfigOf
