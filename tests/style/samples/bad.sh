#!/bin/bash
echo "no licence line"
	echo tabbed 
