{
  "targets": [
    {
      "target_name": "fileops",
      "sources": ["src/native/fileops.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
