module schedlat.test/gofixtures

go 1.19
